"""The run path: a composed config → checked and normalised (``config``) → task, backbone and recipe
from the zoo → a Lightning trainer (``train``) → a results record (``results``), with one owner of
preemption and resume (``requeue``) and one run per directory (``lock``)."""
