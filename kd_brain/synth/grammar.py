"""A seeded grammar of spoken requests to a voice assistant.

The grammar is data: ``RULES`` maps a rule name to its alternatives; an
alternative is a string in which ``{name}`` expands another rule (so rules
nest) and ``[words]`` is optional (said half the time). ``DOMAINS`` weights the
top-level request types. Word lists (``WORDS``) are plain space- or
comma-separated strings, so extending the vocabulary is editing text.

Numbers, times and durations are spelled as words, so the text given to the
TTS engine is exactly the transcript (no normaliser can disagree with it).
Transcripts are upper case, like the real bed.

Example
-------
>>> g = Grammar()
>>> s = g.sentences(3, seed=1)
>>> s == Grammar().sentences(3, seed=1) and all(x == x.upper() for x in s)
True
"""

import random
import re

# Word lists: one rule per list; comma-separated where entries have spaces.
WORDS = {
    "digit": "one two three four five six seven eight nine",
    "teen": "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen",
    "tens": "twenty thirty forty fifty sixty seventy eighty ninety",
    "hour": "one two three four five six seven eight nine ten eleven twelve",
    "minute_word": "oh five, ten, fifteen, twenty, twenty five, thirty, thirty five, forty, forty five, fifty, fifty five",
    "day": "monday tuesday wednesday thursday friday saturday sunday",
    "when": "today, tomorrow, tonight, this morning, this afternoon, this evening, this weekend, next week, "
            "on {day}, on {day} morning, on {day} evening, next {day}",
    "part_of_day": "in the morning, in the afternoon, in the evening, at night",
    "first_name": "anna ben chloe daniel emma frank grace henry isabel jack kate liam mia noah olivia peter "
                  "rachel sam tom victoria william zoe alice bob carlos diana eric fiona george hannah ivan "
                  "julia kevin laura mark nina oscar paula robert sarah steve tina vincent wendy adam bella "
                  "chris david ella felix helen james lucy martin nathan rose simon sophie thomas maria "
                  "joseph linda michael susan brian karen jason amy ryan megan eric andrew jessica",
    "relation": "mom, dad, grandma, grandpa, my sister, my brother, my wife, my husband, my boss, "
                "the office, the doctor, the dentist, my neighbour, aunt mary, uncle joe",
    "surname": "smith johnson brown taylor miller wilson moore anderson thomas jackson white harris martin "
               "garcia clark lewis walker hall allen young king wright scott green baker adams nelson hill "
               "campbell mitchell roberts carter phillips evans turner parker collins edwards stewart morris "
               "murphy cook rogers morgan cooper peterson reed bailey bell kelly howard ward cox richardson "
               "wood watson brooks bennett gray hughes price sanders myers long ross foster",
    "city": "london, paris, berlin, madrid, rome, dublin, lisbon, vienna, prague, warsaw, oslo, stockholm, "
            "helsinki, athens, istanbul, cairo, nairobi, lagos, tokyo, osaka, seoul, beijing, shanghai, "
            "singapore, sydney, melbourne, auckland, delhi, mumbai, dubai, moscow, toronto, vancouver, "
            "montreal, chicago, boston, seattle, denver, dallas, houston, miami, atlanta, phoenix, "
            "new york, los angeles, san francisco, san diego, las vegas, new orleans, washington, "
            "philadelphia, detroit, portland, nashville, austin, mexico city, buenos aires, lima, bogota, "
            "santiago, rio de janeiro, edinburgh, glasgow, manchester, liverpool, bristol, leeds, "
            "cardiff, belfast, amsterdam, brussels, zurich, geneva, munich, hamburg, barcelona, venice, "
            "florence, milan, naples, copenhagen",
    "room": "kitchen, living room, bedroom, bathroom, hallway, garage, office, dining room, basement, "
            "attic, garden, porch, kids room, guest room, laundry room, nursery, study, hall, pantry",
    "light": "lights, light, lamp, ceiling light, floor lamp, desk lamp, reading light, night light, "
             "lamps, spotlights, fairy lights, wall lights",
    "switchable": "fan, heater, air conditioner, tv, television, radio, speaker, coffee machine, kettle, "
                  "dishwasher, washing machine, dryer, oven, humidifier, air purifier, vacuum cleaner, "
                  "sprinklers, electric blanket, water heater, printer, projector, fireplace",
    "openable": "blinds, curtains, shades, garage door, front door, back door, gate, window, windows",
    "colour": "red orange yellow green blue purple pink white warm white cool white turquoise violet gold",
    "genre": "jazz, rock, pop, classical, blues, country, hip hop, reggae, soul, funk, disco, folk, metal, "
             "punk, techno, house, ambient, gospel, latin, salsa, opera, piano, acoustic, indie, electronic, "
             "rap, swing, bluegrass, lounge",
    "decade": "sixties seventies eighties nineties",
    "mood": "relaxing, happy, sad, calm, upbeat, romantic, chill, energetic, sleepy, quiet, loud, "
            "peaceful, cheerful, party, workout, study, dinner, morning, summer, christmas, road trip",
    "band_word": "black, white, red, blue, golden, silver, wild, lonely, electric, midnight, crystal, "
                 "broken, velvet, happy, little, big, young, old, northern, southern, rolling, silent",
    "band_noun": "horses, rivers, kings, queens, wolves, tigers, roses, stones, hearts, lights, ghosts, "
                 "brothers, sisters, machines, dreams, shadows, pilots, sailors, birds, lions, bells",
    "song_word": "love, night, rain, fire, home, dream, heart, sky, road, river, summer, morning, city, "
                 "ocean, moon, sun, island, mountain, angel, freedom, paradise, thunder, memory, shadow",
    "podcast_topic": "news, sports, science, history, comedy, business, technology, cooking, politics, "
                     "health, travel, football, basketball, tennis, cricket, baseball, golf, movies, "
                     "books, gardening, true crime, language learning",
    "media_verb": "play, put on, start, shuffle, find",
    "media_want": "i want to hear, let me hear, i'd like to listen to, can i hear, i'm in the mood for",
    "item": "milk, eggs, bread, butter, cheese, yogurt, apples, bananas, oranges, grapes, lemons, limes, "
            "strawberries, blueberries, tomatoes, potatoes, onions, garlic, carrots, lettuce, spinach, "
            "broccoli, cucumbers, peppers, mushrooms, avocados, rice, pasta, flour, sugar, salt, "
            "pepper, olive oil, vinegar, honey, jam, peanut butter, cereal, oats, coffee, tea, juice, "
            "orange juice, water, sparkling water, beer, wine, chicken, beef, pork, sausages, bacon, "
            "ham, salmon, tuna, shrimp, tofu, beans, lentils, chickpeas, soup, noodles, crackers, "
            "cookies, chocolate, ice cream, chips, popcorn, nuts, almonds, raisins, bagels, muffins, "
            "tortillas, pizza, ketchup, mustard, mayonnaise, soy sauce, toothpaste, toothbrush, "
            "shampoo, conditioner, soap, hand soap, deodorant, razors, tissues, toilet paper, "
            "paper towels, napkins, dish soap, laundry detergent, sponges, trash bags, aluminium foil, "
            "batteries, light bulbs, candles, dog food, cat food, cat litter, diapers, baby wipes, "
            "vitamins, aspirin, band aids, sunscreen, cream, sour cream, cottage cheese, "
            "celery, zucchini, cabbage, cauliflower, corn, peas, pineapple, mango, peaches, pears, "
            "cherries, watermelon, melon, coconut, walnuts, granola, pancake mix, maple syrup, "
            "cinnamon, basil, parsley, ginger, paprika",
    "list_name": "shopping list, grocery list, to do list, packing list, christmas list, party list, "
                 "hardware list, pharmacy list",
    "amount": "some, a bag of, a box of, a bottle of, two bottles of, a pack of, a dozen, a jar of, "
              "a can of, three cans of, a pound of, two pounds of, a loaf of, a carton of",
    "weather_noun": "weather, forecast, temperature, humidity, wind, chance of rain, pollen count, "
                    "air quality, uv index, sunrise, sunset",
    "weather_adj": "rain, snow, be sunny, be windy, be cold, be hot, be foggy, be cloudy, storm, "
                   "freeze, be warm, be humid",
    "clothing": "an umbrella, a jacket, a coat, a scarf, gloves, sunglasses, a hat, boots, a raincoat, "
                "shorts, a sweater",
    "timer_label": "pasta, eggs, rice, pizza, bread, cake, cookies, laundry, homework, meditation, "
                   "nap, workout, parking, oven, tea, chicken, potatoes, break",
    "alarm_label": "work, school, gym, the train, my flight, my meeting, medicine, the bus, "
                   "yoga, church, the dentist, practice",
    "message": "i'm running late, i'm on my way, see you soon, call me back, dinner is ready, "
               "i'll be home at {time}, can you pick up some {item}, happy birthday, thank you so much, "
               "are we still meeting {when}, don't forget the {item}, i love you, good night, "
               "i'm stuck in traffic, the meeting is at {time}, where are you, let's have lunch {when}, "
               "i'll call you later, the door is open, please bring {item}, i miss you, "
               "i'm leaving now, let me know when you get home, the kids are asleep",
    "app": "camera, calendar, clock, calculator, maps, music, photos, settings, messages, email, "
           "weather, notes, podcasts, radio, news, browser",
    "question": "how far is the moon, how tall is mount everest, what is the capital of {country}, "
                "who wrote romeo and juliet, how many days are in {month}, what day is it, "
                "what time is it, what time is it in {city}, what is the date today, "
                "how do you spell {spellword}, what does {spellword} mean, when is the next full moon, "
                "how many ounces are in a pound, what is {num} times {digit}, what is {num} plus {num}, "
                "how long does it take to boil an egg, tell me a joke, tell me a fun fact, "
                "what's the population of {city}, how old is the earth, when does the sun set",
    "country": "france, germany, spain, italy, japan, china, india, brazil, canada, mexico, egypt, "
               "kenya, australia, norway, sweden, poland, greece, turkey, peru, chile, argentina, "
               "portugal, ireland, iceland, finland, thailand, vietnam, morocco",
    "month": "january february march april may june july august september october november december",
    "spellword": "necessary, rhythm, beautiful, restaurant, library, tomorrow, business, separate, "
                 "definitely, calendar, vacuum, february, wednesday, language, weird, believe",
    "place": "the airport, the train station, the nearest pharmacy, the supermarket, the hospital, "
             "the post office, the library, the gym, a gas station, a coffee shop, the bank, "
             "the park, the beach, the museum, the city centre, work, home, school, "
             "an italian restaurant, a chinese restaurant, the cinema, a hardware store, "
             "the bus stop, the zoo, the stadium, a parking garage",
    "travel": "drive, walk, cycle, take the bus, take the train, get",
}

RULES = {
    # numbers, times and durations, spelled as words
    "num": ["{digit}", "{teen}", "{tens}", "{tens} {digit}"],
    "small": ["{digit}", "{teen}", "twenty", "thirty", "forty five", "{tens} {digit}"],
    "time": ["{hour} {minute_word}", "{hour} o'clock", "half past {hour}", "quarter past {hour}",
             "quarter to {hour}", "{hour} {minute_word} {part_of_day}", "{hour} o'clock {part_of_day}",
             "noon", "midnight"],
    "duration": ["{small} minutes", "{small} seconds", "one minute", "an hour", "{digit} hours",
                 "half an hour", "an hour and a half", "{digit} minutes and {small} seconds",
                 "a minute and a half", "ninety seconds"],
    "percent": ["{tens} percent", "{digit} percent", "{tens} {digit} percent", "one hundred percent"],
    "degrees": ["{tens} degrees", "{tens} {digit} degrees", "{teen} degrees"],
    "person": ["{first_name}", "{first_name}", "{first_name} {surname}", "{relation}"],
    "room_ref": ["the {room}", "the {room}", "my {room}", "all rooms", "the whole house"],
    "please": ["please", "", "", ""],
    "opener": ["", "", "", "", "hey", "okay", "please", "can you", "could you", "would you",
               "i want you to", "go ahead and"],
    # media
    "artist": ["{first_name} {surname}", "the {band_word} {band_noun}", "{band_word} {band_noun}",
               "{first_name} and the {band_noun}", "dj {first_name}"],
    "song": ["{song_word}", "{band_word} {song_word}", "{song_word} of the {song_word}",
             "the {song_word} song", "my {song_word}", "{song_word} in {city}", "{first_name}"],
    "music_thing": ["some {genre}", "some {genre} music", "{mood} music", "{genre} from the {decade}",
                    "{mood} {genre}", "songs by {artist}", "the latest album by {artist}",
                    "{song} by {artist}", "the song {song}", "my {mood} playlist", "my {genre} playlist",
                    "{genre} radio", "the {podcast_topic} podcast", "the {podcast_topic} news",
                    "something {mood}", "music by {artist}", "the top hits", "my favourite songs",
                    "the radio", "an audiobook", "white noise", "rain sounds", "ocean sounds"],
    "music": ["{opener} {media_verb} {music_thing} [{please}]",
              "{media_verb} {music_thing} in the {room}", "{media_verb} {music_thing} on the {switchable}",
              "{media_want} {music_thing}", "{control} [{please}]", "{opener} {control}",
              "turn the volume {updown}", "turn it {updown} [a bit]", "set the volume to {num}",
              "volume {num}", "what song is this", "who sings this song", "who is this artist",
              "add this song to my {mood} playlist", "i like this song", "i don't like this song",
              "play the next episode of the {podcast_topic} podcast", "play it again",
              "repeat this song", "play something else", "stop the music in the {room}",
              "how long is this song", "skip ahead {small} seconds", "go back {small} seconds"],
    "control": ["pause", "pause the music", "stop", "stop the music", "resume", "resume the music",
                "skip this song", "next song", "previous song", "skip", "shuffle my music",
                "mute", "unmute", "turn shuffle on", "turn shuffle off", "play the next one"],
    "updown": ["up", "down", "up a little", "down a little", "way down", "all the way up"],
    # weather
    "weather": ["what's the {weather_noun} [in {city}] {when}", "what's the weather like in {city}",
                "will it {weather_adj} {when}", "will it {weather_adj} in {city} {when}",
                "is it going to {weather_adj} {when}", "do i need {clothing} {when}",
                "should i bring {clothing} {when}", "how hot will it be {when}", "how cold is it outside",
                "what's the {weather_noun} going to be {when}", "tell me the {weather_noun}",
                "{opener} tell me the weather for {city}", "is it {weather_word} outside",
                "what's the temperature in the {room}", "when will the rain stop",
                "what's the weekly forecast for {city}", "will there be a storm {when}"],
    "weather_word": ["raining", "snowing", "sunny", "windy", "cold", "hot", "cloudy", "foggy", "warm"],
    # timers and alarms
    "timer": ["{opener} set a timer for {duration}", "set a {duration} timer",
              "set a {timer_label} timer for {duration}", "timer for {duration} [{please}]",
              "how much time is left on the {timer_label} timer", "how much time is left",
              "cancel the {timer_label} timer", "cancel the timer", "stop the timer",
              "pause the timer", "add {duration} to the timer", "start a timer for {duration}",
              "{opener} set an alarm for {time}", "set an alarm for {time} {when}",
              "wake me up at {time}", "wake me up at {time} {when}", "wake me up in {duration}",
              "set an alarm for {alarm_label} at {time}", "cancel my alarm for {time}",
              "cancel all my alarms", "what alarms do i have {when}", "snooze", "snooze for {duration}",
              "turn off the alarm", "move my alarm to {time}",
              "remind me to {task} at {time}", "remind me to {task} {when}",
              "remind me to {task} in {duration}", "what are my reminders {when}"],
    "task": ["call {person}", "buy {item}", "take my medicine", "water the plants", "feed the cat",
             "walk the dog", "pay the rent", "check the oven", "take out the trash",
             "pick up {person}", "send the report", "book a table", "charge my phone",
             "move the car", "email {person}", "go to {place}"],
    # smart home
    "home": ["{opener} turn {onoff} the {light} in {room_ref}", "turn {onoff} the {light} [{please}]",
             "turn {onoff} the {switchable} [in the {room}]", "switch {onoff} the {switchable}",
             "switch {onoff} the {light} in the {room}", "{room} {light} {onoff}",
             "dim the {light} in the {room} [to {percent}]", "brighten the {light} [in the {room}]",
             "set the {light} to {percent}", "set the {room} {light} to {percent}",
             "make the {light} {colour}", "change the {room} {light} to {colour}",
             "set the thermostat to {degrees}", "set the heating to {degrees} {when}",
             "turn the heating {updown}", "make it warmer in the {room}", "make it cooler in here",
             "{openclose} the {openable} [in the {room}]", "is the {openable} open",
             "lock the front door", "unlock the back door", "is the front door locked",
             "lock all the doors", "are the {light} on in the {room}", "is the {switchable} on",
             "start the {switchable}", "turn everything off", "turn on {scene} mode",
             "set the fan to {speed}", "run the {switchable} {when}",
             "turn {onoff} the {switchable} at {time}"],
    "onoff": ["on", "off", "on", "off"],
    "openclose": ["open", "close", "open", "close", "raise", "lower"],
    "scene": ["movie", "night", "party", "reading", "dinner", "away", "sleep", "morning"],
    "speed": ["low", "medium", "high", "speed {digit}"],
    # shopping lists
    "shopping": ["{opener} add [{amount}] {item} to my {list_name}", "add {item} and {item} to the list",
                 "put {item} on my {list_name}", "add {item} to the {list_name}",
                 "i need [{amount}] {item}", "we're out of {item}", "we need more {item}",
                 "remove {item} from my {list_name}", "take {item} off the list",
                 "what's on my {list_name}", "read my {list_name}", "clear my {list_name}",
                 "is {item} on my {list_name}", "how many items are on my {list_name}",
                 "order [{amount}] {item}", "reorder {item}", "create a new list called {list_name}",
                 "add {task_noun} to my to do list"],
    "task_noun": ["call {person}", "buy {item}", "clean the {room}", "fix the {switchable}",
                  "book a doctor appointment", "renew my passport", "pay the bills"],
    # calls and messages
    "calls": ["{opener} call {person}", "call {person} on speaker", "call {person} on the mobile",
              "dial {digit} {digit} {digit} {digit} {digit} {digit} {digit}",
              "video call {person}", "hang up", "answer the call", "redial the last number",
              "who called me {when}", "do i have any missed calls",
              "{opener} send a message to {person}", "text {person} {message}",
              "send {person} a message saying {message}", "message {person} that {message}",
              "tell {person} {message}", "read my messages", "read my new messages",
              "do i have any new messages", "reply {message}", "email {person} about the meeting {when}",
              "send an email to {person} saying {message}", "call {place}", "announce {message}",
              "drop in on the {room}", "find my phone", "ring my phone"],
    # general: questions, calendar, travel, apps
    "general": ["{question}", "{question}", "{opener} open the {app} app", "open {app}",
                "what's on my calendar {when}", "add a meeting with {person} {when} at {time}",
                "schedule lunch with {person} {when}", "when is my next meeting",
                "cancel my meeting with {person}", "how long will it take to {travel} to {place}",
                "how far is {place}", "directions to {place}", "navigate to {place}",
                "how is the traffic to {place}", "find {place} near me", "when does {place} close",
                "is {place} open {when}", "what's the news", "what's the news in {city}",
                "what's the score of the {podcast_topic} game", "when is the birthday party for {first_name}",
                "how many days until {month} {ordinal}", "what time does the sun rise {when}",
                "convert {num} {unit} to {unit}", "what's {num} {unit} in {unit}", "good morning",
                "good night", "thank you", "what can you do", "never mind", "cancel", "stop"],
    "unit": ["miles", "kilometres", "pounds", "kilograms", "ounces", "grams", "cups", "litres",
             "feet", "metres", "inches", "centimetres", "dollars", "euros"],
    "ordinal": ["first", "second", "third", "fourth", "fifth", "tenth", "twelfth", "fifteenth",
                "twentieth", "twenty first", "thirtieth"],
}

DOMAINS = {"music": 0.22, "weather": 0.13, "timer": 0.17, "home": 0.2, "shopping": 0.1,
           "calls": 0.1, "general": 0.08}

# Talk-programme sentences for synthetic TV/radio talk noise: other words
# and other shapes than requests, so noise is "someone else talking".
TALK = {
    "talk": ["{talk_open} {talk_body}", "{talk_body}", "{talk_body} {talk_close}"],
    "talk_open": ["good evening and welcome back.", "and now,", "in other news,", "meanwhile,",
                  "this just in.", "well, you know,", "let me tell you,", "back to the studio."],
    "talk_close": ["more after the break.", "stay with us.", "that's all for now.", "back to you."],
    "talk_body": ["the weather in {city} will be {weather_word} with highs of {degrees}.",
                  "the {band_word} {band_noun} won their game against {city} {when}.",
                  "{first_name} {surname} said the new plan for {city} is {talk_adj}.",
                  "traffic near {place} is {talk_adj} this {part_of_day_word}.",
                  "prices for {item} went up {percent} since {month}.",
                  "our guest {first_name} {surname} has written a book about {podcast_topic}.",
                  "people in {city} are talking about {podcast_topic} and {podcast_topic}.",
                  "the festival in {city} opens {when} with {genre} and {genre}.",
                  "i think {first_name} was right about the {song_word} and the {song_word}.",
                  "it was a {talk_adj} year for {podcast_topic} in {country}."],
    "talk_adj": ["great", "terrible", "surprising", "expensive", "quiet", "busy", "slow", "difficult"],
    "part_of_day_word": ["morning", "afternoon", "evening"],
}

# Fixed phrases ("snooze", "what song is this") are real but few: drawn as
# often as templates they make a third of the test set verbatim copies of
# training sentences. So an alternative is drawn in proportion to how many
# sentences it can produce, up to this many (then all weigh the same).
# 200 gives ~8% test-in-train sentences and ~8% requests of <= 3 words.
SATURATION = 200

_SLOT = re.compile(r"\{(\w+)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")


def _split_words(text):
    return [w.strip() for w in (text.split(",") if "," in text else text.split())]


class Grammar:
    """Expands the request grammar into sentences, seeded and deterministic.

    Arguments
    ---------
    rules : dict, optional
        Extra or replacing rules (name -> list of alternatives).

    Example
    -------
    >>> g = Grammar()
    >>> len(g.sentence(random.Random(0)).split()) > 0
    True
    >>> 800 < len(g.vocabulary()) < 1300
    True
    """

    def __init__(self, rules=None):
        self.rules = {k: _split_words(v) for k, v in WORDS.items()}
        self.rules.update(RULES)
        self.rules.update(TALK)
        self.rules.update(rules or {})
        self._counts = {}
        self.weights = {k: [min(1.0, self._count_alt(a) / SATURATION) for a in alts]
                        for k, alts in self.rules.items()}

    def _count(self, symbol):
        """Number of distinct expansions of a rule (an upper bound; recursion counts 1)."""
        if symbol not in self._counts:
            self._counts[symbol] = 1  # guards against recursive rules
            self._counts[symbol] = sum(self._count_alt(a) for a in self.rules[symbol])
        return self._counts[symbol]

    def _count_alt(self, alt):
        n = 2 ** len(_OPTIONAL.findall(alt))
        for sub in _SLOT.findall(alt):
            n *= self._count(sub)
        return n

    def expand(self, symbol, rng):
        """Expands one rule with ``rng`` (a ``random.Random``); returns lower-case text."""
        if symbol not in self.rules:
            raise KeyError(f"grammar: no rule named {{{symbol}}}")
        text = rng.choices(self.rules[symbol], weights=self.weights[symbol])[0]
        text = _OPTIONAL.sub(lambda m: m.group(1) if rng.random() < 0.5 else "", text)
        text = _SLOT.sub(lambda m: self.expand(m.group(1), rng), text)
        return " ".join(text.split())

    def sentence(self, rng):
        """One request, upper case (the transcript and, lower-cased, the TTS input)."""
        domain = rng.choices(list(DOMAINS), weights=list(DOMAINS.values()))[0]
        return self.expand(domain, rng).upper()

    def sentences(self, n, seed):
        """``n`` requests from a generator seeded with ``seed``."""
        rng = random.Random(seed)
        return [self.sentence(rng) for _ in range(n)]

    def talk(self, rng):
        """One sentence of talk-programme text (for synthetic talk noise), lower case."""
        return self.expand("talk", rng)

    def vocabulary(self):
        """Every word a request can contain (upper case), found by walking the rules."""
        words, seen = set(), set()

        def walk(symbol):
            if symbol in seen:
                return
            seen.add(symbol)
            for alt in self.rules[symbol]:
                for sub in _SLOT.findall(alt):
                    walk(sub)
                plain = _SLOT.sub(" ", alt.replace("[", " ").replace("]", " "))
                words.update(w.upper() for w in plain.split())

        for domain in DOMAINS:
            walk(domain)
        return words


def overlap_rate(train_sentences, test_sentences):
    """Fraction of test sentences that also occur (verbatim) in training.

    Example
    -------
    >>> overlap_rate(["A B", "C"], ["A B", "D", "E", "C"])
    0.5
    """
    train = set(train_sentences)
    return sum(s in train for s in test_sentences) / max(1, len(test_sentences))
