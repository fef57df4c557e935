"""codeprior.evaluate"""
