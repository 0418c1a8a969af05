from openelb.cli import main

main()
