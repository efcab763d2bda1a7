from services.categorizer.app import create_app
from shared.serve import serve

serve(create_app, service="categorizer", default_port=8004)
