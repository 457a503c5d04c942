"""The CTC acoustic model shared by teacher and student."""
