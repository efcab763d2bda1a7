from services.importer.app import create_app
from shared.serve import serve

serve(create_app, service="importer", default_port=8003)
