from palyra.cli import main

main()
