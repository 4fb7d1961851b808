"""`python -m bbvi`: the demo."""

from bbvi.demo import main

main()
