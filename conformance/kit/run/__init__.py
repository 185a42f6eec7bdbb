"""A pytest run of the suite: how it is invoked (`invocation`), how items are planned
(`cases`) and the session's machinery (`session`: stash keys, cleanup, lease renewal, xdist,
the reporter, the exit gate).

May import: every other package of the kit. Only the suites and the plugin import this."""
