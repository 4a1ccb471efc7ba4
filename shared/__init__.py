"""gridcase's common package: the event contract and the plumbing every service uses."""
