"""`python -m maskrank` runs the same CLI as the `maskrank` console script."""

from maskrank.cli.main import main

if __name__ == "__main__":
    main()
