"""The sans-IO core: decisions only; no sockets, threads, clocks, awaits or store calls."""
