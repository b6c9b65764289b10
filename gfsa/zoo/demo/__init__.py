"""Tiny data sets and checkpoints in the real on-disk formats that the tasks read: what ``gfsa demo-data``
writes (runnable examples offline) and what the tests train on. One module per domain; every writer takes
the folder to write and returns it, and writes the same files for the same arguments."""
