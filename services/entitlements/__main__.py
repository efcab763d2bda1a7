from services.entitlements.app import create_app
from shared.serve import serve

serve(create_app, service="entitlements", default_port=8001)
