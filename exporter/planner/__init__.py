"""The sizing algorithm of 9.1 (Steps 7-12), as pure functions."""
