"""netlab data plane: namespaces, CNI, runc."""
