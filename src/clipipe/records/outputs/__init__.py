"""Record outputs; importing this package registers them."""
from clipipe.records.outputs import file, stdout, stub  # noqa: F401
