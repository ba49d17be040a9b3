from cnnjax.cli import main

main()
