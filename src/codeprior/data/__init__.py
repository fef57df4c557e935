"""codeprior.data"""
