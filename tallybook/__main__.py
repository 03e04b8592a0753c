from tallybook.cli.main import app

app()
