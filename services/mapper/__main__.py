"""python -m services.mapper"""

from services.mapper.launcher import main

main()
