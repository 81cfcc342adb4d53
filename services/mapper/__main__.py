"""python -m services.mapper"""

from services.mapper.main import main

main()
