"""The kit's ground floor: errors (`errors`), JSON data (`jsondata`), the run's settings
(`settings`) and state shared between a run's processes (`runstate`).

May import: the standard library and third-party packages only, nothing else of the kit."""
