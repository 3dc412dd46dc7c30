"""The `ctrt` command line: one module per command group, the only code that imports across
layers."""
