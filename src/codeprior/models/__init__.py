"""codeprior.models"""
