"""Domain of the task API: containers, their processes, state rules and stdio plumbing."""
