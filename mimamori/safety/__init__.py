"""The area safety check (安否確認): start a check, ask every home (blink, messages, links), recognise
answers (a double toggle of a bulb, a link, a button, a team member on the household's behalf), and
show who has not answered."""
