import sys

from budget_plugins._cli import main

sys.exit(main())
