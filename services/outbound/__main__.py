"""python -m services.outbound"""

from services.outbound.main import main

main()
