"""``python -m comalite ...`` (and ``torchrun --nproc_per_node N -m comalite ...``): the ``comalite`` command."""
from comalite.cli import main

main()
