"""`python -m nann_cli`: the `nann` command."""
import sys

from nann_cli.main import main

sys.exit(main())
