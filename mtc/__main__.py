from mtc.cli.main import main

main()
