"""``python -m siamsearch ...``: the same command line as the ``siamsearch`` script (handy in a virtual
environment whose ``bin/`` is not on ``PATH``)."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="siamsearch")
