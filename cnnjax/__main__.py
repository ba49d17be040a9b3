from cnnjax.entry import main

main()
