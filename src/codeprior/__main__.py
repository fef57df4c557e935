import sys

from codeprior.cli import main

sys.exit(main())
