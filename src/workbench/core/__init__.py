"""The bottom layer: errors and exit codes, names, config, the store, processes and ports.

Imports nothing else of the workbench."""
