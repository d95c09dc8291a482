import sys

from mock_gateway.cli import main

sys.exit(main())
