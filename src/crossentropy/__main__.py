from crossentropy.cli import main

raise SystemExit(main())
