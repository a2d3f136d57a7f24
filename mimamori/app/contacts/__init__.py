"""How each person is reached (連絡先): their e-mail addresses and phones' push subscriptions."""
