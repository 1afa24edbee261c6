from depth_common.cli import main

raise SystemExit(main())
