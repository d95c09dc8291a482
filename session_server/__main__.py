from session_server.cli import main

raise SystemExit(main())
