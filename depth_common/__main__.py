from depth_common.cli.parser import main

raise SystemExit(main())
