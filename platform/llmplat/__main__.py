import sys

from llmplat.cli import main

sys.exit(main())
