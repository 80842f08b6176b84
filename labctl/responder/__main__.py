import sys

from labctl.responder.server import main

sys.exit(main())
