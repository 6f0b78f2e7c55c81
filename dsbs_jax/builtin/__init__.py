"""Built-in tasks made on this machine: data and a simulated teacher (see docs/builtin.md)."""
