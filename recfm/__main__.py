from recfm.cli import main

main()
