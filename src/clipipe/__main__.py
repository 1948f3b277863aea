"""`python -m clipipe`."""
from clipipe.cli import entry

entry()
