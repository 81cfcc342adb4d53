"""python -m services.writer"""

from services.writer.main import main

main()
