"""
Run the C{txass} command line as C{python -m txass}.
"""

from txass._cli import main

if __name__ == "__main__":
    main()
