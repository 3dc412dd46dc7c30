"""Backends run the graphs of one engine directory; the runtime Session owns all state."""
