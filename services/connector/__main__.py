from services.connector.app import create_app
from shared.serve import serve

serve(create_app, service="connector", default_port=8002)
