"""python -m services.ingest"""

from services.ingest.main import main

main()
