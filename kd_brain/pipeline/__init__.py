"""Pipeline plumbing: model folders, run locks, all-or-nothing writes."""
