"""python -m services.ingest"""

from services.ingest.launcher import main

main()
